//! Asymmetric keys, signatures and MACs on the gRPC door: Sign, Verify, GetPublicKey,
//! DeriveSharedSecret, GenerateMac, VerifyMac, GenerateDataKeyPair,
//! GenerateDataKeyPairWithoutPlaintext.

use zeroize::Zeroizing;

use super::super::{expose, opt, FromMessage};
use super::crypto::algorithm;
use crate::core::asym::{
    DataKeyPairRequest, DeriveSharedSecretRequest, DeriveSharedSecretResponse,
    GenerateDataKeyPairRequest, GenerateDataKeyPairResponse,
    GenerateDataKeyPairWithoutPlaintextRequest, GenerateDataKeyPairWithoutPlaintextResponse,
    GenerateMacRequest, GenerateMacResponse, GetPublicKeyRequest, GetPublicKeyResponse,
    SignRequest, SignResponse, VerifyMacRequest, VerifyMacResponse, VerifyRequest, VerifyResponse,
};
use crate::core::KmsError;
use crate::pb;

impl FromMessage<pb::SignRequest> for SignRequest {
    fn from_message(m: pb::SignRequest) -> Result<Self, KmsError> {
        Ok(SignRequest {
            key_id: m.key_id,
            message: Zeroizing::new(m.message),
            message_type: algorithm("messageType", &m.message_type)?,
            signing_algorithm: algorithm("signingAlgorithm", &m.signing_algorithm)?,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        })
    }
}

impl FromMessage<pb::VerifyRequest> for VerifyRequest {
    fn from_message(m: pb::VerifyRequest) -> Result<Self, KmsError> {
        Ok(VerifyRequest {
            key_id: m.key_id,
            message: Zeroizing::new(m.message),
            message_type: algorithm("messageType", &m.message_type)?,
            signature: m.signature,
            signing_algorithm: algorithm("signingAlgorithm", &m.signing_algorithm)?,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        })
    }
}

impl FromMessage<pb::GetPublicKeyRequest> for GetPublicKeyRequest {
    fn from_message(m: pb::GetPublicKeyRequest) -> Result<Self, KmsError> {
        Ok(GetPublicKeyRequest {
            key_id: m.key_id,
            grant_tokens: m.grant_tokens,
        })
    }
}

impl FromMessage<pb::DeriveSharedSecretRequest> for DeriveSharedSecretRequest {
    fn from_message(m: pb::DeriveSharedSecretRequest) -> Result<Self, KmsError> {
        Ok(DeriveSharedSecretRequest {
            key_id: m.key_id,
            key_agreement_algorithm: algorithm(
                "keyAgreementAlgorithm",
                &m.key_agreement_algorithm,
            )?,
            public_key: m.public_key,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        })
    }
}

impl FromMessage<pb::GenerateMacRequest> for GenerateMacRequest {
    fn from_message(m: pb::GenerateMacRequest) -> Result<Self, KmsError> {
        Ok(GenerateMacRequest {
            key_id: m.key_id,
            message: Zeroizing::new(m.message),
            mac_algorithm: algorithm("macAlgorithm", &m.mac_algorithm)?,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        })
    }
}

impl FromMessage<pb::VerifyMacRequest> for VerifyMacRequest {
    fn from_message(m: pb::VerifyMacRequest) -> Result<Self, KmsError> {
        Ok(VerifyMacRequest {
            key_id: m.key_id,
            message: Zeroizing::new(m.message),
            mac_algorithm: algorithm("macAlgorithm", &m.mac_algorithm)?,
            mac: m.mac,
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        })
    }
}

/// The members both GenerateDataKeyPair messages carry.
macro_rules! data_key_pair_request {
    ($m:expr) => {{
        let m = $m;
        DataKeyPairRequest {
            key_id: m.key_id,
            encryption_context: m.encryption_context,
            key_pair_spec: opt(m.key_pair_spec),
            grant_tokens: m.grant_tokens,
            dry_run: m.dry_run,
        }
    }};
}

impl FromMessage<pb::GenerateDataKeyPairRequest> for GenerateDataKeyPairRequest {
    fn from_message(m: pb::GenerateDataKeyPairRequest) -> Result<Self, KmsError> {
        Ok(GenerateDataKeyPairRequest(data_key_pair_request!(m)))
    }
}

impl FromMessage<pb::GenerateDataKeyPairWithoutPlaintextRequest>
    for GenerateDataKeyPairWithoutPlaintextRequest
{
    fn from_message(m: pb::GenerateDataKeyPairWithoutPlaintextRequest) -> Result<Self, KmsError> {
        Ok(GenerateDataKeyPairWithoutPlaintextRequest(
            data_key_pair_request!(m),
        ))
    }
}

impl From<SignResponse> for pb::SignResponse {
    fn from(out: SignResponse) -> Self {
        pb::SignResponse {
            key_id: out.key_id,
            signature: out.signature,
            signing_algorithm: out.signing_algorithm.as_str().into(),
        }
    }
}

impl From<VerifyResponse> for pb::VerifyResponse {
    fn from(out: VerifyResponse) -> Self {
        pb::VerifyResponse {
            key_id: out.key_id,
            signature_valid: out.signature_valid,
            signing_algorithm: out.signing_algorithm.as_str().into(),
        }
    }
}

/// Algorithm names as the message's repeated string.
fn names<T: Copy + Into<&'static str>>(list: &[T]) -> Vec<String> {
    list.iter()
        .map(|a| {
            let name: &'static str = (*a).into();
            name.to_string()
        })
        .collect()
}

impl From<GetPublicKeyResponse> for pb::GetPublicKeyResponse {
    fn from(out: GetPublicKeyResponse) -> Self {
        pb::GetPublicKeyResponse {
            key_id: out.key_id,
            public_key: out.public_key,
            customer_master_key_spec: out.key_spec.clone(),
            key_spec: out.key_spec,
            key_usage: out.key_usage,
            encryption_algorithms: names(out.encryption_algorithms),
            signing_algorithms: names(out.signing_algorithms),
            key_agreement_algorithms: names(out.key_agreement_algorithms),
        }
    }
}

impl From<DeriveSharedSecretResponse> for pb::DeriveSharedSecretResponse {
    fn from(out: DeriveSharedSecretResponse) -> Self {
        pb::DeriveSharedSecretResponse {
            key_id: out.key_id,
            shared_secret: expose(out.shared_secret),
            key_agreement_algorithm: out.key_agreement_algorithm.as_str().into(),
            key_origin: out.key_origin,
        }
    }
}

impl From<GenerateMacResponse> for pb::GenerateMacResponse {
    fn from(out: GenerateMacResponse) -> Self {
        pb::GenerateMacResponse {
            mac: out.mac,
            mac_algorithm: out.mac_algorithm.as_str().into(),
            key_id: out.key_id,
        }
    }
}

impl From<VerifyMacResponse> for pb::VerifyMacResponse {
    fn from(out: VerifyMacResponse) -> Self {
        pb::VerifyMacResponse {
            key_id: out.key_id,
            mac_valid: out.mac_valid,
            mac_algorithm: out.mac_algorithm.as_str().into(),
        }
    }
}

impl From<GenerateDataKeyPairResponse> for pb::GenerateDataKeyPairResponse {
    fn from(out: GenerateDataKeyPairResponse) -> Self {
        pb::GenerateDataKeyPairResponse {
            private_key_ciphertext_blob: out.private_key_ciphertext_blob,
            private_key_plaintext: expose(out.private_key_plaintext),
            public_key: out.public_key,
            key_id: out.key_id,
            key_pair_spec: out.key_pair_spec,
            key_material_id: out.key_material_id,
        }
    }
}

impl From<GenerateDataKeyPairWithoutPlaintextResponse>
    for pb::GenerateDataKeyPairWithoutPlaintextResponse
{
    fn from(out: GenerateDataKeyPairWithoutPlaintextResponse) -> Self {
        pb::GenerateDataKeyPairWithoutPlaintextResponse {
            private_key_ciphertext_blob: out.private_key_ciphertext_blob,
            public_key: out.public_key,
            key_id: out.key_id,
            key_pair_spec: out.key_pair_spec,
            key_material_id: out.key_material_id,
        }
    }
}
